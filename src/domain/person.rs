//! What DAARION wants a person's Matrix account to look like, and how an
//! event changes it. Delivery is at-least-once and out of order, so every
//! field remembers the `created_at` of the event that last set it and an
//! older event never overwrites a newer one (last writer wins, per field).

use super::event::{Event, EventKind, Patch};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub username: Option<String>,
    pub username_at: i64,
    pub display_name: Option<String>,
    pub display_name_at: i64,
    pub avatar_url: Option<String>,
    pub avatar_url_at: i64,
    /// Lower case (see `Event::email`).
    pub email: Option<String>,
    pub email_at: i64,
    pub deleted: bool,
    /// `created_at` of the newest `user.registered` or `user.deleted` applied.
    pub lifecycle_at: i64,
}

impl Wanted {
    /// Applies `event`; returns whether anything changed.
    pub fn apply(&mut self, event: &Event) -> bool {
        let before = self.clone();
        let t = event.created_at_ms;
        match event.kind {
            // A delete wins a tie with a registration: refusing access is the safe side.
            EventKind::Deleted if t >= self.lifecycle_at => {
                self.deleted = true;
                self.lifecycle_at = t;
            }
            // Only a newer registration brings a deleted person back;
            // `user.updated` never does.
            EventKind::Registered if t > self.lifecycle_at || self.lifecycle_at == 0 => {
                self.deleted = false;
                self.lifecycle_at = t;
            }
            _ => {}
        }
        if event.kind != EventKind::Deleted {
            if let Some(username) = &event.username {
                set(
                    &mut self.username,
                    &mut self.username_at,
                    Patch::Set(username),
                    t,
                );
            }
            set(
                &mut self.display_name,
                &mut self.display_name_at,
                event.display_name.as_ref(),
                t,
            );
            set(
                &mut self.avatar_url,
                &mut self.avatar_url_at,
                event.avatar_url.as_ref(),
                t,
            );
            set(&mut self.email, &mut self.email_at, event.email.as_ref(), t);
        }
        *self != before
    }

    /// Whether Synapse must change to go from `before` to `self`: the
    /// display name, the avatar or deletion. Newer timestamps on the same
    /// values (a sync pass listing an unchanged person) and usernames (the
    /// localpart never changes) ask for nothing.
    pub fn needs_work_since(&self, before: &Wanted) -> bool {
        self.display_name != before.display_name
            || self.avatar_url != before.avatar_url
            || self.deleted != before.deleted
    }

    /// Whether what a person not yet named could be named by changed: a
    /// name, the address, or their registration arriving (which ends the
    /// wait for a username, see `jobs::person`).
    pub fn naming_changed_since(&self, before: &Wanted) -> bool {
        self.username != before.username
            || self.display_name != before.display_name
            || self.email != before.email
            || (before.lifecycle_at == 0 && self.lifecycle_at != 0)
    }
}

impl<T> Patch<T> {
    pub(super) fn as_ref(&self) -> Patch<&T> {
        match self {
            Patch::Unchanged => Patch::Unchanged,
            Patch::Clear => Patch::Clear,
            Patch::Set(v) => Patch::Set(v),
        }
    }
}

pub(super) fn set(field: &mut Option<String>, field_at: &mut i64, patch: Patch<&String>, t: i64) {
    if t < *field_at {
        return;
    }
    match patch {
        Patch::Unchanged => return,
        Patch::Clear => *field = None,
        Patch::Set(v) => *field = Some(v.clone()),
    }
    *field_at = t;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, t: i64, name: Patch<String>) -> Event {
        Event {
            id: format!("e{t}"),
            kind,
            created_at_ms: t,
            user_id: "u".into(),
            username: None,
            display_name: name,
            avatar_url: Patch::Unchanged,
            email: Patch::Unchanged,
            session_id: None,
        }
    }

    #[test]
    fn newer_names_win_in_any_arrival_order() {
        let e1 = event(EventKind::Registered, 1, Patch::Set("A".into()));
        let e2 = event(EventKind::Updated, 2, Patch::Set("B".into()));
        let e3 = event(EventKind::Updated, 3, Patch::Clear);
        for order in [
            [&e1, &e2, &e3],
            [&e3, &e2, &e1],
            [&e2, &e3, &e1],
            [&e3, &e1, &e2],
        ] {
            let mut w = Wanted::default();
            for e in order {
                w.apply(e);
            }
            assert_eq!(w.display_name, None, "{order:?}");
            assert_eq!(w.display_name_at, 3);
        }
    }

    #[test]
    fn absent_fields_are_unchanged_and_repeats_change_nothing() {
        let mut w = Wanted::default();
        assert!(w.apply(&event(EventKind::Registered, 1, Patch::Set("A".into()))));
        assert!(!w.apply(&event(EventKind::Updated, 2, Patch::Unchanged)));
        assert!(!w.apply(&event(EventKind::Registered, 1, Patch::Set("A".into()))));
        assert_eq!(w.display_name.as_deref(), Some("A"));
    }

    #[test]
    fn deletion_sticks_until_a_newer_registration() {
        let mut w = Wanted::default();
        w.apply(&event(EventKind::Registered, 1, Patch::Unchanged));
        w.apply(&event(EventKind::Deleted, 5, Patch::Unchanged));
        assert!(w.deleted);
        // An update, newer or older, does not revive.
        w.apply(&event(EventKind::Updated, 9, Patch::Set("X".into())));
        assert!(w.deleted);
        // A late copy of the original registration does not revive.
        w.apply(&event(EventKind::Registered, 1, Patch::Unchanged));
        assert!(w.deleted);
        // A new registration does.
        w.apply(&event(EventKind::Registered, 10, Patch::Unchanged));
        assert!(!w.deleted);
        // A delete older than that registration is stale.
        w.apply(&event(EventKind::Deleted, 7, Patch::Unchanged));
        assert!(!w.deleted);
    }

    #[test]
    fn delete_before_registration_arrives_keeps_person_deleted() {
        let mut w = Wanted::default();
        w.apply(&event(EventKind::Deleted, 5, Patch::Unchanged));
        w.apply(&event(EventKind::Registered, 1, Patch::Set("A".into())));
        assert!(w.deleted);
        assert_eq!(w.display_name.as_deref(), Some("A"));
    }

    #[test]
    fn only_value_changes_need_synapse_work() {
        let mut w = Wanted::default();
        w.apply(&event(EventKind::Registered, 1, Patch::Set("A".into())));
        let before = w.clone();
        // The same name again, newer: recorded, but nothing for Synapse.
        assert!(w.apply(&event(EventKind::Registered, 2, Patch::Set("A".into()))));
        assert!(!w.needs_work_since(&before));
        w.apply(&event(EventKind::Updated, 3, Patch::Set("B".into())));
        assert!(w.needs_work_since(&before));
        let before = w.clone();
        w.apply(&event(EventKind::Deleted, 4, Patch::Unchanged));
        assert!(w.needs_work_since(&before));
    }
}
