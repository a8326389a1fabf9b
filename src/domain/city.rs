//! DAARION.city's room events (CONTRACT.md section 8): the webhook shape,
//! [`CityEvent::parse`] (the only way to get a validated one), the room
//! listing of its API turned into the same kind of event, and how events
//! change what DAARION.city wants of a room and its members. As for people,
//! every field and every membership remembers the `created_at` of the event
//! that last set it, so an older event never overwrites a newer one.

use serde::Deserialize;

use super::agent::{
    parse_action, parse_agent, parse_message, parse_presence, AgentAction, AgentChange,
};
use super::event::{
    clean_display_name, patch, timestamp, unacceptable, valid_id, EventError, Patch, MAX_URL_BYTES,
};
use super::person::set;

/// Longest topic kept (Matrix has no hard limit; events must stay < 64 KiB).
const MAX_TOPIC_CHARS: usize = 4096;
/// Longest slug: it becomes an alias, `#<prefix><slug>:<server>` ≤ 255 bytes.
const MAX_SLUG_BYTES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Private,
}

column_words!(Visibility {
    Public => "public",
    Private => "private",
});

/// A member's role in a City Room and its Matrix power level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Member,
    Moderator,
    Owner,
}

column_words!(Role {
    Member => "member",
    Moderator => "moderator",
    Owner => "owner",
});

impl Role {
    /// CONTRACT.md section 8: owner 100, moderator 50, member 0.
    pub fn power(self) -> i64 {
        match self {
            Role::Member => 0,
            Role::Moderator => 50,
            Role::Owner => 100,
        }
    }
}

/// What an event says about its room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `room.created` / `room.updated`: absent fields unchanged.
    Room(RoomFields),
    Deleted,
    MemberAdded {
        member_id: String,
        role: Role,
    },
    MemberRemoved {
        member_id: String,
    },
    /// A listing of the room API: every field, and the whole membership.
    Listing {
        fields: RoomFields,
        members: Vec<(String, Role)>,
        deleted: bool,
    },
    /// `agent.*` and `presence.changed`: about the agent `subject`.
    Agent(AgentChange),
    /// `agent.message` and what else an agent does in a place (section 13).
    Action(Box<AgentAction>),
}

impl Change {
    /// Whether the change is about a room (its fields or members).
    pub fn is_room(&self) -> bool {
        !matches!(self, Change::Agent(_) | Change::Action(_))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomFields {
    pub slug: Option<String>,
    pub name: Patch<String>,
    pub topic: Patch<String>,
    pub avatar_url: Patch<String>,
    pub visibility: Option<Visibility>,
}

/// A validated DAARION.city event about one room or one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CityEvent {
    pub id: String,
    /// The event's type, as sent (for logs and the event log).
    pub kind: &'static str,
    /// Milliseconds since the epoch; orders events of one room.
    pub created_at_ms: i64,
    /// What it is about: a room's `room_id` (room events, and an agent's
    /// message into the room), or an agent's `agent_id`.
    pub subject: String,
    pub change: Change,
}

/// The result of parsing a signed body.
#[derive(Debug)]
pub enum ParsedCity {
    Event(CityEvent),
    /// A well-formed event of a type not handled (yet); acknowledged, not stored.
    Ignored {
        id: String,
    },
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created_at: String,
    data: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct RawRoom {
    room_id: String,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default, deserialize_with = "patch")]
    name: Patch<String>,
    #[serde(default, deserialize_with = "patch")]
    topic: Patch<String>,
    #[serde(default, deserialize_with = "patch")]
    avatar_url: Patch<String>,
    #[serde(default)]
    visibility: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawMember {
    room_id: String,
    member_id: String,
    #[serde(default)]
    role: Option<String>,
}

/// One room of DAARION.city's room API (CONTRACT.md section 8).
#[derive(Debug, Clone, Deserialize)]
pub struct ListedRoom {
    pub room_id: String,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub members: Vec<ListedMember>,
    pub updated_at: String,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListedMember {
    pub member_id: String,
    #[serde(default)]
    pub role: Option<String>,
}

impl CityEvent {
    pub fn parse(body: &[u8]) -> Result<ParsedCity, EventError> {
        let raw: RawEvent = serde_json::from_slice(body)
            .map_err(|e| EventError::Malformed(format!("body is not a valid event: {e}")))?;
        if !valid_id(&raw.id) {
            return Err(unacceptable("id must be 1 to 255 printable characters"));
        }
        let Some(kind) = CityKind::parse(&raw.kind) else {
            return Ok(ParsedCity::Ignored { id: raw.id });
        };
        let created_at_ms = timestamp(&raw.created_at, "created_at")?;
        use CityKind::*;
        let (subject, change) = match kind {
            AgentMessage => {
                let action = AgentAction::Message(parse_message(raw.data)?);
                (action.subject(), Change::Action(Box::new(action)))
            }
            AgentMessageEdited | AgentMessageDeleted | AgentReaction | AgentTyping | AgentRead => {
                let action = parse_action(kind.as_str(), raw.data)?;
                (action.subject(), Change::Action(Box::new(action)))
            }
            PresenceChanged => {
                let (member_id, change) = parse_presence(raw.data)?;
                (member_id, Change::Agent(change))
            }
            AgentCreated | AgentUpdated | AgentDeleted => {
                let (agent_id, change) = parse_agent(kind.as_str(), raw.data)?;
                (agent_id, Change::Agent(change))
            }
            RoomCreated | RoomUpdated | RoomDeleted | MemberAdded | MemberRemoved => {
                room_change(kind, raw.data)?
            }
        };
        Ok(ParsedCity::Event(CityEvent {
            id: raw.id,
            kind: kind.as_str(),
            created_at_ms,
            subject,
            change,
        }))
    }

    /// The event that brings a room to what the room API lists: its
    /// `created_at` is the room's `updated_at` (so newer webhooks still
    /// win), and its id is fixed per room and version, so listing an
    /// unchanged room again is a duplicate.
    pub fn from_listing(room: ListedRoom) -> Result<CityEvent, EventError> {
        if !valid_id(&room.room_id) {
            return Err(unacceptable(
                "room_id must be 1 to 255 printable characters",
            ));
        }
        let created_at_ms = timestamp(&room.updated_at, "updated_at")?;
        let opt = |v: Option<String>| v.map_or(Patch::Clear, Patch::Set);
        let fields = fields(
            room.slug,
            opt(room.name),
            opt(room.topic),
            opt(room.avatar_url),
            room.visibility,
        )?;
        let mut members = Vec::with_capacity(room.members.len());
        for m in room.members {
            if !valid_id(&m.member_id) {
                return Err(unacceptable(
                    "member_id must be 1 to 255 printable characters",
                ));
            }
            members.push((m.member_id, role(m.role.as_deref())?));
        }
        Ok(CityEvent {
            id: format!("listing:{}:{created_at_ms}", room.room_id),
            kind: "room.listed",
            created_at_ms,
            subject: room.room_id,
            change: Change::Listing {
                fields,
                members,
                deleted: room.deleted,
            },
        })
    }
}

/// The kinds of DAARION.city event the service acts on (CONTRACT.md
/// sections 8, 9); any other is acknowledged and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CityKind {
    RoomCreated,
    RoomUpdated,
    RoomDeleted,
    MemberAdded,
    MemberRemoved,
    AgentCreated,
    AgentUpdated,
    AgentDeleted,
    AgentMessage,
    AgentMessageEdited,
    AgentMessageDeleted,
    AgentReaction,
    AgentTyping,
    AgentRead,
    PresenceChanged,
}

impl CityKind {
    const ALL: [CityKind; 15] = [
        CityKind::RoomCreated,
        CityKind::RoomUpdated,
        CityKind::RoomDeleted,
        CityKind::MemberAdded,
        CityKind::MemberRemoved,
        CityKind::AgentCreated,
        CityKind::AgentUpdated,
        CityKind::AgentDeleted,
        CityKind::AgentMessage,
        CityKind::AgentMessageEdited,
        CityKind::AgentMessageDeleted,
        CityKind::AgentReaction,
        CityKind::AgentTyping,
        CityKind::AgentRead,
        CityKind::PresenceChanged,
    ];

    fn as_str(self) -> &'static str {
        match self {
            CityKind::RoomCreated => "room.created",
            CityKind::RoomUpdated => "room.updated",
            CityKind::RoomDeleted => "room.deleted",
            CityKind::MemberAdded => "room.member_added",
            CityKind::MemberRemoved => "room.member_removed",
            CityKind::AgentCreated => "agent.created",
            CityKind::AgentUpdated => "agent.updated",
            CityKind::AgentDeleted => "agent.deleted",
            CityKind::AgentMessage => "agent.message",
            CityKind::AgentMessageEdited => "agent.message_edited",
            CityKind::AgentMessageDeleted => "agent.message_deleted",
            CityKind::AgentReaction => "agent.reaction",
            CityKind::AgentTyping => "agent.typing",
            CityKind::AgentRead => "agent.read",
            CityKind::PresenceChanged => "presence.changed",
        }
    }

    fn parse(s: &str) -> Option<CityKind> {
        CityKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A room or membership event's room id and change.
fn room_change(kind: CityKind, data: serde_json::Value) -> Result<(String, Change), EventError> {
    let malformed = |e: serde_json::Error| {
        EventError::Malformed(format!("data does not fit {}: {e}", kind.as_str()))
    };
    let (room_id, change) = match kind {
        CityKind::MemberAdded | CityKind::MemberRemoved => {
            let member: RawMember = serde_json::from_value(data).map_err(malformed)?;
            if !valid_id(&member.member_id) {
                return Err(unacceptable(
                    "data.member_id must be 1 to 255 printable characters",
                ));
            }
            let change = if kind == CityKind::MemberAdded {
                Change::MemberAdded {
                    member_id: member.member_id,
                    role: role(member.role.as_deref())?,
                }
            } else {
                Change::MemberRemoved {
                    member_id: member.member_id,
                }
            };
            (member.room_id, change)
        }
        _ => {
            let room: RawRoom = serde_json::from_value(data).map_err(malformed)?;
            let change = if kind == CityKind::RoomDeleted {
                Change::Deleted
            } else {
                let fields = fields(
                    room.slug,
                    room.name,
                    room.topic,
                    room.avatar_url,
                    room.visibility,
                )?;
                if kind == CityKind::RoomCreated && fields.slug.is_none() {
                    return Err(unacceptable("room.created needs data.slug"));
                }
                Change::Room(fields)
            };
            (room.room_id, change)
        }
    };
    if !valid_id(&room_id) {
        return Err(unacceptable(
            "data.room_id must be 1 to 255 printable characters",
        ));
    }
    Ok((room_id, change))
}

fn role(raw: Option<&str>) -> Result<Role, EventError> {
    match raw {
        None => Ok(Role::Member),
        Some(r) => r
            .parse()
            .map_err(|()| unacceptable("data.role must be member, moderator or owner")),
    }
}

fn fields(
    slug: Option<String>,
    name: Patch<String>,
    topic: Patch<String>,
    avatar_url: Patch<String>,
    visibility: Option<String>,
) -> Result<RoomFields, EventError> {
    let slug = slug.map(|s| s.trim().to_string());
    if slug.as_deref().is_some_and(|s| {
        s.is_empty() || s.len() > MAX_SLUG_BYTES || s.chars().any(char::is_control)
    }) {
        return Err(unacceptable("data.slug must be 1 to 100 printable bytes"));
    }
    if let Patch::Set(url) = &avatar_url {
        if url.len() > MAX_URL_BYTES {
            return Err(unacceptable("data.avatar_url is longer than 2048 bytes"));
        }
    }
    let visibility = match visibility.as_deref() {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|()| unacceptable("data.visibility must be public or private"))?,
        ),
    };
    let empty_is_clear = |p: Patch<String>| match p {
        Patch::Set(v) if v.is_empty() => Patch::Clear,
        other => other,
    };
    Ok(RoomFields {
        slug,
        name: empty_is_clear(name.map(clean_display_name)),
        topic: empty_is_clear(
            topic.map(|t| t.trim().chars().take(MAX_TOPIC_CHARS).collect::<String>()),
        ),
        avatar_url: empty_is_clear(avatar_url.map(|u| u.trim().to_string())),
        visibility,
    })
}

/// What DAARION.city wants of a room (not its members).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomWanted {
    pub slug: Option<String>,
    pub slug_at: i64,
    pub name: Option<String>,
    pub name_at: i64,
    pub topic: Option<String>,
    pub topic_at: i64,
    pub avatar_url: Option<String>,
    pub avatar_url_at: i64,
    /// None until an event says (then private: the safe side).
    pub visibility: Option<Visibility>,
    pub visibility_at: i64,
    pub deleted: bool,
    /// `created_at` of the newest creation, listing or deletion applied.
    pub lifecycle_at: i64,
}

/// What DAARION.city wants of one membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberWanted {
    pub member_id: String,
    pub role: Role,
    /// False: removed (kept to know whom to remove, and to order events).
    pub present: bool,
    pub at: i64,
}

impl RoomWanted {
    /// Applies `event` to the room and its `members` (the room's known
    /// memberships, changed in place, new ones appended); returns whether
    /// the room or a membership changed.
    pub fn apply(&mut self, event: &CityEvent, members: &mut Vec<MemberWanted>) -> bool {
        let before = self.clone();
        let t = event.created_at_ms;
        let mut members_changed = false;
        match &event.change {
            Change::Room(f) => {
                // Only a newer creation brings a deleted room back.
                if event.kind == "room.created" && (t > self.lifecycle_at || self.lifecycle_at == 0)
                {
                    self.deleted = false;
                    self.lifecycle_at = t;
                }
                self.apply_fields(f, t);
            }
            Change::Deleted => {
                if t >= self.lifecycle_at {
                    self.deleted = true;
                    self.lifecycle_at = t;
                }
            }
            Change::MemberAdded { member_id, role } => {
                members_changed = set_member(members, member_id, Some(*role), t);
            }
            Change::MemberRemoved { member_id } => {
                members_changed = set_member(members, member_id, None, t);
            }
            Change::Listing {
                fields,
                members: listed,
                deleted,
            } => {
                if t >= self.lifecycle_at {
                    self.deleted = *deleted;
                    self.lifecycle_at = t;
                }
                self.apply_fields(fields, t);
                for (member_id, role) in listed {
                    members_changed |= set_member(members, member_id, Some(*role), t);
                }
                let listed: std::collections::HashSet<&str> =
                    listed.iter().map(|(m, _)| m.as_str()).collect();
                for m in members.iter_mut() {
                    if m.present && m.at < t && !listed.contains(m.member_id.as_str()) {
                        m.present = false;
                        m.at = t;
                        members_changed = true;
                    }
                }
            }
            // Not about the room (see `Change::is_room`).
            Change::Agent(_) | Change::Action(_) => {}
        }
        members_changed || *self != before
    }

    fn apply_fields(&mut self, f: &RoomFields, t: i64) {
        if let Some(slug) = &f.slug {
            set(&mut self.slug, &mut self.slug_at, Patch::Set(slug), t);
        }
        set(&mut self.name, &mut self.name_at, f.name.as_ref(), t);
        set(&mut self.topic, &mut self.topic_at, f.topic.as_ref(), t);
        set(
            &mut self.avatar_url,
            &mut self.avatar_url_at,
            f.avatar_url.as_ref(),
            t,
        );
        if let Some(v) = f.visibility {
            if t >= self.visibility_at {
                self.visibility = Some(v);
                self.visibility_at = t;
            }
        }
    }
}

/// Sets one membership (`role` None: removed) unless a newer event set it;
/// returns whether it changed.
fn set_member(
    members: &mut Vec<MemberWanted>,
    member_id: &str,
    role: Option<Role>,
    t: i64,
) -> bool {
    let present = role.is_some();
    match members.iter_mut().find(|m| m.member_id == member_id) {
        Some(m) if t < m.at => false,
        Some(m) => {
            let changed = m.present != present || (present && Some(m.role) != role);
            m.present = present;
            if let Some(role) = role {
                m.role = role;
            }
            m.at = t;
            changed
        }
        None => {
            members.push(MemberWanted {
                member_id: member_id.to_string(),
                role: role.unwrap_or(Role::Member),
                present,
                at: t,
            });
            present
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> CityEvent {
        match CityEvent::parse(body.as_bytes()).unwrap() {
            ParsedCity::Event(e) => e,
            ParsedCity::Ignored { .. } => panic!("ignored"),
        }
    }

    fn member(kind: &str, t: u32, member: &str, role: &str) -> CityEvent {
        parse(&format!(
            r#"{{"id":"e{t}{member}","type":"{kind}","created_at":"2026-11-24T10:00:{t:02}Z",
                "data":{{"room_id":"r","member_id":"{member}","role":"{role}"}}}}"#
        ))
    }

    #[test]
    fn room_events_parse_and_are_checked() {
        let e = parse(
            r#"{"id":"e1","type":"room.created","created_at":"2026-11-24T10:00:00Z",
                "data":{"room_id":"r_kyiv","slug":"kyiv-center","name":"Київ","topic":null,
                        "visibility":"public"}}"#,
        );
        assert_eq!(e.subject, "r_kyiv");
        let Change::Room(f) = e.change else { panic!() };
        assert_eq!(f.slug.as_deref(), Some("kyiv-center"));
        assert_eq!(f.name, Patch::Set("Київ".into()));
        assert_eq!(f.topic, Patch::Clear);
        assert_eq!(f.avatar_url, Patch::Unchanged);
        assert_eq!(f.visibility, Some(Visibility::Public));
        for bad in [
            r#"{"id":"e","type":"room.created","created_at":"2026-11-24T10:00:00Z","data":{"room_id":"r"}}"#,
            r#"{"id":"e","type":"room.updated","created_at":"2026-11-24T10:00:00Z","data":{"room_id":"r","visibility":"secret"}}"#,
            r#"{"id":"e","type":"room.member_added","created_at":"2026-11-24T10:00:00Z","data":{"room_id":"r","member_id":"u","role":"king"}}"#,
            r#"{"id":"e","type":"room.updated","created_at":"yesterday","data":{"room_id":"r"}}"#,
        ] {
            assert!(
                matches!(
                    CityEvent::parse(bad.as_bytes()),
                    Err(EventError::Unacceptable(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            CityEvent::parse(br#"{"id":"e","type":"room.member_added","created_at":"2026-11-24T10:00:00Z","data":{"room_id":"r"}}"#),
            Err(EventError::Malformed(_))
        ));
        assert!(matches!(
            CityEvent::parse(br#"{"id":"e","type":"city.weather","created_at":"2026-11-24T10:00:00Z","data":{}}"#),
            Ok(ParsedCity::Ignored { .. })
        ));
    }

    #[test]
    fn memberships_follow_the_newest_event_in_any_order() {
        let events = [
            member("room.member_added", 1, "u1", "member"),
            member("room.member_added", 3, "u1", "owner"),
            member("room.member_removed", 2, "u1", "member"),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
            let mut room = RoomWanted::default();
            let mut members = Vec::new();
            for i in order {
                room.apply(&events[i], &mut members);
            }
            assert_eq!(members.len(), 1);
            assert!(members[0].present, "{order:?}");
            assert_eq!(members[0].role, Role::Owner, "{order:?}");
        }
    }

    #[test]
    fn a_listing_is_the_whole_membership_but_never_undoes_newer_events() {
        let mut room = RoomWanted::default();
        let mut members = Vec::new();
        room.apply(
            &member("room.member_added", 1, "old", "member"),
            &mut members,
        );
        room.apply(
            &member("room.member_added", 9, "late", "member"),
            &mut members,
        );
        let listing = CityEvent::from_listing(ListedRoom {
            room_id: "r".into(),
            slug: Some("s".into()),
            name: Some("N".into()),
            topic: None,
            avatar_url: None,
            visibility: Some("private".into()),
            members: vec![ListedMember {
                member_id: "new".into(),
                role: Some("moderator".into()),
            }],
            updated_at: "2026-11-24T10:00:05Z".into(),
            deleted: false,
        })
        .unwrap();
        assert!(room.apply(&listing, &mut members));
        let get = |id: &str| members.iter().find(|m| m.member_id == id).unwrap().clone();
        assert!(!get("old").present);
        assert!(get("late").present, "a newer webhook wins over the listing");
        assert_eq!(get("new").role, Role::Moderator);
        assert_eq!(room.visibility, Some(Visibility::Private));
        // The same listing again changes nothing.
        assert!(!room.apply(&listing, &mut members));
    }

    #[test]
    fn a_deleted_room_comes_back_only_with_a_newer_creation() {
        let deleted = parse(
            r#"{"id":"d","type":"room.deleted","created_at":"2026-11-24T10:00:05Z","data":{"room_id":"r"}}"#,
        );
        let created = |t: u32| {
            parse(&format!(
                r#"{{"id":"c{t}","type":"room.created","created_at":"2026-11-24T10:00:{t:02}Z",
                    "data":{{"room_id":"r","slug":"s"}}}}"#
            ))
        };
        let mut room = RoomWanted::default();
        let mut members = Vec::new();
        room.apply(&deleted, &mut members);
        room.apply(&created(1), &mut members);
        assert!(room.deleted);
        room.apply(&created(7), &mut members);
        assert!(!room.deleted);
    }
}
