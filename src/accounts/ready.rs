//! A few seconds' memory of who has an active account, so that repeated
//! token exchanges skip the database (with SQLite's single connection it
//! is the bottleneck of the hot path). A webhook for a person clears their
//! entry in this process at once; other replicas' entries run out after
//! [`TTL`], which is how much longer a just-deleted person may still be
//! handed a login token there (Synapse refuses it once the worker has
//! deactivated the account).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ActiveAccount;

pub const TTL: Duration = Duration::from_secs(5);
/// Beyond this many entries the cache starts afresh (a crude bound that
/// costs one database read per person when it trips).
const MAX_ENTRIES: usize = 100_000;

pub struct ReadyCache {
    ttl: Duration,
    /// DAARION user id → (the account, when we saw it active).
    entries: Mutex<HashMap<String, (ActiveAccount, Instant)>>,
}

impl ReadyCache {
    pub fn new(ttl: Duration) -> ReadyCache {
        ReadyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The person's account, if it was active within the TTL.
    pub fn get(&self, user_id: &str) -> Option<ActiveAccount> {
        let entries = self.entries.lock().expect("never poisoned");
        entries
            .get(user_id)
            .filter(|(_, seen)| seen.elapsed() < self.ttl)
            .map(|(account, _)| account.clone())
    }

    pub fn remember(&self, user_id: &str, account: &ActiveAccount) {
        let mut entries = self.entries.lock().expect("never poisoned");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(user_id.to_string(), (account.clone(), Instant::now()));
    }

    /// Something about the person changed: look in the database next time.
    pub fn forget(&self, user_id: &str) {
        self.entries.lock().expect("never poisoned").remove(user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let olena = ActiveAccount {
            localpart: "olena".into(),
            display_name: None,
        };
        let cache = ReadyCache::new(Duration::from_secs(60));
        assert_eq!(cache.get("u"), None);
        cache.remember("u", &olena);
        assert_eq!(cache.get("u"), Some(olena.clone()));
        cache.forget("u");
        assert_eq!(cache.get("u"), None);

        let cache = ReadyCache::new(Duration::ZERO);
        cache.remember("u", &olena);
        assert_eq!(cache.get("u"), None);
    }
}
