//! Which localparts Synapse already has, read from its paged user list, so
//! a backfill can create accounts without looking each one up first.
//!
//! The admin API's account creation (`PUT /_synapse/admin/v2/users/…`) is an
//! upsert: on an existing account it would rewrite a stranger's display name
//! and external ids. So before creating, the worker must know the localpart
//! is free. A lookup per person costs Synapse about a fifth of the creation
//! itself (1.0 ms of CPU against 4.7 ms, Synapse 1.163 on this machine). Its
//! user list costs about 0.02 ms per account listed, plus a part per request
//! that grows with the number of accounts (7 ms with 4,000, 15 ms with
//! 14,000: every request counts them all). A sync pass that is about to
//! create many accounts therefore reads the list once, when that is cheaper
//! than the lookups it saves, and the worker asks this index instead.
//!
//! Once read, the index is kept (a few dozen bytes per account), and later
//! passes with many creations only read the accounts created since; between
//! them, and in passes with few creations, it does not answer (lookups are
//! cheaper than refreshing it then).
//!
//! It stays current: before it answers, it reads the accounts created since
//! its last read if that was more than [`REFRESH`] ago (or ten times as long
//! as a request for the list takes, on very large servers). The list is
//! ordered by creation time, then name, so new accounts come at its end; a
//! refresh starts again from the first account of the newest second seen
//! (creation times are in seconds, and a later account of that same second
//! may sort before the ones already read). Every request for the list costs
//! Synapse about as much as 25 creations' lookups with 8,000 accounts, which
//! is why the refresh is not more frequent: at one a second, a backfill ran at
//! 84% of Synapse's raw rate, at one every 5 s at 93%.
//!
//! What remains is a window of [`REFRESH`]: an account that an admin creates
//! by hand, with exactly the localpart of someone being backfilled, in the
//! seconds before that person's creation, is taken over (its display name
//! and external ids set to the person's). The creation then answers 200
//! instead of 201, and the worker marks the person failed with the account
//! named, for a person to check (see `jobs::person`). Accounts this
//! service creates never collide: their localparts are unique in our
//! database.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{Result, Synapse};
use crate::clock::Clock;

/// The longest the index answers without reading Synapse's new accounts
/// (unless a request for the list takes over a tenth of it); see above.
const REFRESH: Duration = Duration::from_secs(5);
/// Accounts per page of Synapse's user list: large, as every request pays
/// for counting all accounts.
const PAGE: u32 = 5000;
/// What looking up one missing account costs Synapse (CPU, measured).
const LOOKUP_COST: Duration = Duration::from_millis(1);
/// What one request for the user list costs Synapse (CPU, measured): a
/// fixed part, a part per account it holds (each request counts and sorts
/// them all), and a part per account listed.
const LIST_REQUEST_COST: Duration = Duration::from_millis(4);
const LIST_COST_PER_ACCOUNT_HELD: Duration = Duration::from_nanos(800);
const LIST_COST_PER_ACCOUNT_LISTED: Duration = Duration::from_micros(20);
/// Below this many creations, lookups are cheaper than even a short list.
const MIN_CREATIONS: u64 = 50;

pub struct TakenLocalparts {
    state: Mutex<State>,
    /// When the index was read is the service's clock's business: a test
    /// moves it past [`TakenLocalparts::REFRESH`] instead of waiting.
    clock: Clock,
}

#[derive(Default)]
struct State {
    /// How many accounts Synapse had when a read was found not worth it.
    too_many: Option<u64>,
    index: Option<Index>,
    /// Whether the index answers: only while a pass creates enough people
    /// to pay for its refreshes; a few creations are cheaper as lookups.
    active: bool,
}

#[derive(Default)]
struct Index {
    /// Lowercased: Synapse refuses a localpart that differs only in case.
    localparts: HashSet<String>,
    /// Where the next refresh starts reading.
    resume: u64,
    /// Accounts in the list at the last read.
    total: u64,
    /// When the last read started (ms, by the service's clock).
    read_at: Option<i64>,
    /// How long the last request for the list took.
    request_time: Duration,
}

impl TakenLocalparts {
    /// The shortest time between two refreshes.
    pub const REFRESH: Duration = REFRESH;

    pub fn new(clock: Clock) -> TakenLocalparts {
        TakenLocalparts {
            state: Mutex::default(),
            clock,
        }
    }

    /// Puts the index to use if looking up `creations` accounts one by one
    /// would cost Synapse more than reading its whole user list (or, once
    /// read, the accounts created since); returns whether it answers now.
    /// The first page tells how many accounts there are, so a list too long
    /// to be worth it costs one page to find out. The estimate is made from
    /// counts and Synapse's measured costs, not from how long the page took:
    /// a busy moment must not change the choice. The reads happen outside
    /// the lock: creations go on (with lookups) meanwhile.
    pub async fn load_if_worth_it(&self, synapse: &Synapse, creations: u64) -> Result<bool> {
        let budget = per(LOOKUP_COST, creations);
        let too_many = {
            let mut state = self.state.lock().await;
            if state.active {
                return Ok(true);
            }
            if creations < MIN_CREATIONS {
                return Ok(false);
            }
            if state.index.is_some() {
                // Kept from an earlier pass: refreshed before it answers.
                state.active = true;
                return Ok(true);
            }
            state.too_many
        };
        if too_many.is_some_and(|accounts| read_cost(accounts) > budget) {
            return Ok(false);
        }
        let mut index = Index::default();
        let read = index
            .read(synapse, Some(budget), self.clock.now_ms())
            .await?;
        let mut state = self.state.lock().await;
        match read {
            Read::TooLong { accounts } => {
                state.too_many = Some(accounts);
                Ok(false)
            }
            Read::Complete => {
                tracing::info!(
                    accounts = index.localparts.len(),
                    "read Synapse's accounts; creations skip the lookup per person"
                );
                state.index = Some(index);
                state.active = true;
                Ok(true)
            }
        }
    }

    /// The pass is over: lookups again, until the next pass with many
    /// creations. The index is kept, to be brought up to date then.
    pub async fn pause(&self) {
        self.state.lock().await.active = false;
    }

    /// Whether `localpart` is free in Synapse, if the index is loaded (None:
    /// look it up). Reads Synapse's newest accounts first when the index is
    /// due for a refresh.
    pub async fn is_free(&self, synapse: &Synapse, localpart: &str) -> Result<Option<bool>> {
        let mut state = self.state.lock().await;
        if !state.active {
            return Ok(None);
        }
        let Some(index) = state.index.as_mut() else {
            return Ok(None);
        };
        let every = REFRESH.max(10 * index.request_time);
        let now = self.clock.now_ms();
        if index
            .read_at
            .is_none_or(|t| now - t >= every.as_millis() as i64)
        {
            index.read(synapse, None, now).await?;
        }
        Ok(Some(!index.localparts.contains(&localpart.to_lowercase())))
    }
}

enum Read {
    Complete,
    /// Reading all these accounts would cost Synapse more than allowed;
    /// nothing more than the first page was read.
    TooLong {
        accounts: u64,
    },
}

impl Index {
    /// Reads the user list from `resume` to its end, unless (with `budget`)
    /// the first page shows that would cost Synapse more.
    /// `now`: when it starts, by the service's clock.
    async fn read(
        &mut self,
        synapse: &Synapse,
        budget: Option<Duration>,
        now: i64,
    ) -> Result<Read> {
        let mut from = self.resume;
        let mut seconds = Seconds::default();
        loop {
            let asked = Instant::now();
            let page = synapse.list_all_users(from, PAGE).await?;
            self.request_time = asked.elapsed();
            if page.total < self.total {
                // Accounts were removed from Synapse's database by hand, so
                // offsets moved: read everything again.
                (self.total, self.resume, from) = (0, 0, 0);
                continue;
            }
            self.total = page.total;
            if let (Some(budget), true) = (budget, from == self.resume) {
                if read_cost(page.total) > budget {
                    return Ok(Read::TooLong {
                        accounts: page.total,
                    });
                }
            }
            for (i, user) in page.users.iter().enumerate() {
                if let Some(localpart) = super::localpart_of(&user.name) {
                    self.localparts.insert(localpart.to_lowercase());
                }
                seconds.saw(from + i as u64, user.created_ms / 1000);
            }
            match page.next {
                Some(next) if next > from => from = next,
                _ => break,
            }
        }
        if let Some(resume) = seconds.resume() {
            self.resume = resume.max(self.resume);
        }
        self.read_at = Some(now);
        Ok(Read::Complete)
    }
}

/// What reading a whole user list of `accounts` costs Synapse.
fn read_cost(accounts: u64) -> Duration {
    let pages = accounts.div_ceil(PAGE as u64).max(1);
    let per_request = LIST_REQUEST_COST + per(LIST_COST_PER_ACCOUNT_HELD, accounts);
    per(per_request, pages) + per(LIST_COST_PER_ACCOUNT_LISTED, accounts)
}

fn per(cost: Duration, n: u64) -> Duration {
    cost.saturating_mul(n.min(u32::MAX as u64) as u32)
}

/// Where to read again next time: the first account of the newest second
/// seen, or of the second before it when that one is adjacent (a second of
/// clock difference between Synapse's processes).
#[derive(Default)]
struct Seconds {
    /// (first offset, second) of the newest second seen.
    newest: Option<(u64, i64)>,
    /// The same for the second seen before it.
    before: Option<(u64, i64)>,
}

impl Seconds {
    /// Accounts come in ascending creation time.
    fn saw(&mut self, offset: u64, second: i64) {
        if self.newest.is_none_or(|(_, s)| second > s) {
            self.before = self.newest;
            self.newest = Some((offset, second));
        }
    }

    fn resume(&self) -> Option<u64> {
        let (offset, second) = self.newest?;
        Some(match self.before {
            Some((earlier, s)) if s + 1 >= second => earlier,
            _ => offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_the_list_costs_by_its_length() {
        // 4,000 accounts: 7.2 ms for the request, 80 ms for the accounts.
        assert_eq!(read_cost(4_000), Duration::from_micros(87_200));
        // Two pages, each counting all 6,000.
        assert_eq!(read_cost(6_000), Duration::from_micros(137_600));
        assert_eq!(read_cost(0), LIST_REQUEST_COST);
        assert!(read_cost(u64::MAX) > Duration::from_secs(3600));
    }

    #[test]
    fn a_refresh_rereads_the_newest_second_and_the_one_before() {
        let mut s = Seconds::default();
        for (offset, second) in [(0, 5), (1, 9), (2, 9), (3, 10), (4, 10)] {
            s.saw(offset, second);
        }
        assert_eq!(s.resume(), Some(1));
        let mut s = Seconds::default();
        for (offset, second) in [(0, 5), (1, 8), (2, 10), (3, 10)] {
            s.saw(offset, second);
        }
        assert_eq!(s.resume(), Some(2));
        assert_eq!(Seconds::default().resume(), None);
    }
}
