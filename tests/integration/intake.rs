//! The set-based intake transaction against both databases: a batch of
//! events must leave exactly what the same events stored one by one leave.

use matrix_provisioner::domain::event::{Event, EventKind, Patch};
use matrix_provisioner::secret::Secret;
use matrix_provisioner::store::JobState::None as JobNone;
use matrix_provisioner::store::{Accepted, JobKind, Store};

use crate::on_both_backends;
use crate::support::*;

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// 600 events over 40 people who share 3 usernames (so localparts collide
/// within a batch and with the database), with repeated event ids, deletions,
/// clears and timestamps out of order.
fn events(tag: &str) -> Vec<Event> {
    let mut rng = Lcg(7);
    let mut out: Vec<Event> = Vec::new();
    for i in 0..600 {
        if i > 10 && rng.below(8) == 0 {
            // A redelivery, possibly inside the same batch.
            let again = out[out.len() - 1 - rng.below(10) as usize].clone();
            out.push(again);
            continue;
        }
        let person = rng.below(40);
        let kind = match rng.below(6) {
            0 => EventKind::Deleted,
            1 | 2 => EventKind::Registered,
            _ => EventKind::Updated,
        };
        let patch = |rng: &mut Lcg, what: &str| match rng.below(4) {
            0 => Patch::Unchanged,
            1 => Patch::Clear,
            n => Patch::Set(format!("{what} {n}")),
        };
        out.push(Event {
            id: format!("{tag}e{i}"),
            kind,
            created_at_ms: 1_000 + rng.below(300) as i64,
            user_id: format!("{tag}u{person}"),
            username: Some(["Олена", "olena", "Taras"][person as usize % 3].to_string()),
            display_name: patch(&mut rng, "name"),
            avatar_url: patch(&mut rng, "https://a.example/x.png?"),
            email: patch(&mut rng, "e"),
            session_id: None,
        });
    }
    out
}

async fn open(backend: Backend) -> (Store, TestDb) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&Secret::new(db.url.clone()), 0)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (store, db)
}

async fn a_batch_stores_what_one_by_one_would(backend: Backend) {
    let tag = unique("");
    let events = events(&tag);
    let (batched, _db1) = open(backend).await;
    let (single, _db2) = open(backend).await;

    // Someone is already known in both databases before the events.
    let squatter = Event {
        id: format!("{tag}first"),
        kind: EventKind::Registered,
        created_at_ms: 1,
        user_id: format!("{tag}squatter"),
        username: Some("olena".into()),
        display_name: Patch::Unchanged,
        avatar_url: Patch::Unchanged,
        email: Patch::Unchanged,
        session_id: None,
    };
    for store in [&batched, &single] {
        store.accept_event(&squatter, 1).await.unwrap();
    }

    let mut want = Vec::new();
    for (i, event) in events.iter().enumerate() {
        want.push(single.accept_event(event, i as i64).await.unwrap());
    }
    let mut got = Vec::new();
    let mut rest = &events[..];
    let mut rng = Lcg(11);
    while !rest.is_empty() {
        let n = (1 + rng.below(120) as usize).min(rest.len());
        let (batch, tail) = rest.split_at(n);
        got.extend(batched.accept_events(batch, 0).await.unwrap());
        rest = tail;
    }
    assert_eq!(got.len(), want.len());
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        let shape = |a: &Accepted| (a.duplicate, a.queued, a.localpart.is_some());
        assert_eq!(shape(got), shape(want), "event {i}: {:?}", events[i]);
    }
    assert!(want.iter().any(|a| a.duplicate), "the mix has redeliveries");

    let mut compared = 0;
    for n in 0..40 {
        let user_id = format!("{tag}u{n}");
        let (Some(a), Some(b)) = (
            batched.person(&user_id).await.unwrap(),
            single.person(&user_id).await.unwrap(),
        ) else {
            continue;
        };
        // Names are settled by the worker, not at intake.
        assert_eq!((&a.localpart, &b.localpart), (&None, &None), "{user_id}");
        assert_eq!(a.wanted, b.wanted, "{user_id}");
        assert_eq!(a.state, b.state, "{user_id}");
        assert_eq!(
            batched.job_state(JobKind::Person, &user_id).await.unwrap() == JobNone,
            single.job_state(JobKind::Person, &user_id).await.unwrap() == JobNone,
            "{user_id}"
        );
        compared += 1;
    }
    assert!(compared > 30, "only {compared} people to compare");
}
on_both_backends!(a_batch_stores_what_one_by_one_would);
