//! The application service's side of Synapse (SYNAPSE.md "Application
//! services", "Rooms and members"): the bot, City Rooms, their state and
//! members. Requests carry the application service's token and so act as
//! its bot (the registration's `sender_localpart`); the bot is made a
//! server admin once, so that the admin join API works in invite-only rooms
//! it administers.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{encode, Auth, Body, Endpoint, Result, Synapse, SynapseError, UserChanges};

/// From this room version on, creators have unlimited power and must not
/// be listed in `power_levels.users` (SYNAPSE.md).
pub const CREATOR_POWER_VERSION: u32 = 12;

/// A City Room's Matrix room as the service creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSpec {
    /// The alias's localpart (`#<this>:<server>`).
    pub alias_localpart: String,
    /// Public: anyone may join and it is listed in the directory (the
    /// listing itself is set apart, see [`Synapse::set_directory`]).
    pub public: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
}

impl RoomSpec {
    /// The `createRoom` body: members may invite, kick, ban and redact
    /// from level 50 (moderators) on.
    fn body(&self) -> Value {
        let mut body = json!({
            "room_alias_name": self.alias_localpart,
            "preset": if self.public { "public_chat" } else { "private_chat" },
            "visibility": if self.public { "public" } else { "private" },
            "creation_content": {"m.federate": true},
            "power_level_content_override": {"invite": 50, "kick": 50, "ban": 50, "redact": 50},
        });
        if let Some(name) = &self.name {
            body["name"] = json!(name);
        }
        if let Some(topic) = &self.topic {
            body["topic"] = json!(topic);
        }
        body
    }
}

/// Who may join a room (`m.room.join_rules`), as far as the service sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRule {
    /// Anyone.
    Public,
    /// Only the invited.
    Invite,
}

impl JoinRule {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRule::Public => "public",
            JoinRule::Invite => "invite",
        }
    }
}

/// The `users` of a room's power levels: Matrix id → level. Levels of
/// users the service does not touch are kept exactly as the room has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PowerUsers(serde_json::Map<String, Value>);

impl PowerUsers {
    pub fn set(&mut self, user_id: &str, level: i64) {
        self.0.insert(user_id.to_string(), json!(level));
    }

    pub fn remove(&mut self, user_id: &str) {
        self.0.remove(user_id);
    }
}

/// Synapse's answer to a ping through the application service link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// How long Synapse's request to the service took.
    pub duration_ms: Option<u64>,
}

/// What a room's current state says, as far as the service manages it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomView {
    pub room_version: String,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub avatar: Option<String>,
    pub join_rule: Option<String>,
    /// The whole `m.room.power_levels` content.
    pub power_levels: Value,
    /// Local and remote users by membership (`join`, `invite`, `leave`, `ban`…).
    pub members: HashMap<String, String>,
}

impl RoomView {
    /// Users whose membership is `join` or `invite`.
    pub fn in_room(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, m)| *m == "join" || *m == "invite")
            .map(|(u, _)| u.as_str())
    }

    pub fn is_joined(&self, user_id: &str) -> bool {
        self.members.get(user_id).is_some_and(|m| m == "join")
    }

    /// `users` of the room's power levels.
    pub fn power_users(&self) -> PowerUsers {
        PowerUsers(
            self.power_levels["users"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// Whether the room's creators hold unlimited power (version 12 on).
    pub fn creators_unlimited(&self) -> bool {
        self.room_version
            .parse::<u32>()
            .is_ok_and(|v| v >= CREATOR_POWER_VERSION)
    }

    fn from_state(events: &[Value]) -> RoomView {
        let mut view = RoomView::default();
        for event in events {
            let content = &event["content"];
            let text = |field: &str| content[field].as_str().map(str::to_string);
            match event["type"].as_str().unwrap_or("") {
                "m.room.create" => {
                    view.room_version = text("room_version").unwrap_or_else(|| "1".into())
                }
                "m.room.name" => view.name = text("name").filter(|n| !n.is_empty()),
                "m.room.topic" => view.topic = text("topic").filter(|t| !t.is_empty()),
                "m.room.avatar" => view.avatar = text("url").filter(|u| !u.is_empty()),
                "m.room.join_rules" => view.join_rule = text("join_rule"),
                "m.room.power_levels" => view.power_levels = content.clone(),
                "m.room.member" => {
                    if let (Some(user), Some(membership)) =
                        (event["state_key"].as_str(), content["membership"].as_str())
                    {
                        view.members
                            .insert(user.to_string(), membership.to_string());
                    }
                }
                _ => {}
            }
        }
        view
    }
}

impl Synapse {
    /// The bot's Matrix id.
    pub fn bot_user_id(&self) -> String {
        self.user_id(&self.bot)
    }

    /// `#<localpart>:<server>`.
    pub fn alias(&self, localpart: &str) -> String {
        format!("#{localpart}:{}", self.server_name)
    }

    /// Registers the bot through the application service (works with
    /// registration off) and makes it a server admin; safe to repeat.
    pub async fn ensure_bot(&self) -> Result<()> {
        if self.register_puppet(&self.bot).await? {
            tracing::info!(bot = %self.bot_user_id(), "registered the application service's bot");
        }
        let user = self.user(&self.bot).await?.ok_or_else(|| {
            SynapseError::refused(404, "M_NOT_FOUND", "the bot's account is missing")
        })?;
        if !user.admin {
            self.put_user(&self.bot, &UserChanges::admin()).await?;
        }
        Ok(())
    }

    /// Asks Synapse to ping the service back through the application
    /// service link (`POST /_matrix/client/v1/appservice/{id}/ping`).
    pub async fn appservice_ping(&self) -> Result<Pong> {
        let path = format!(
            "/_matrix/client/v1/appservice/{}/ping",
            encode(&self.appservice_id)
        );
        let answer = self
            .call(
                Endpoint::AsPing,
                &path,
                Body::Json(&json!({})),
                Auth::AppService,
            )
            .await?;
        Ok(Pong {
            duration_ms: answer["duration_ms"].as_u64(),
        })
    }

    /// The room an alias points to, if any.
    pub async fn lookup_alias(&self, alias: &str) -> Result<Option<String>> {
        let path = format!("/_matrix/client/v3/directory/room/{}", encode(alias));
        match self
            .call(Endpoint::AliasLookup, &path, Body::Empty, Auth::AppService)
            .await
        {
            Ok(body) => Ok(body["room_id"].as_str().map(str::to_string)),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `createRoom` as the bot; returns the room id. A taken alias is
    /// refused as [`super::Refusal::InUse`] (look it up).
    pub async fn create_room(&self, spec: &RoomSpec) -> Result<String> {
        let answer = self
            .call(
                Endpoint::RoomCreate,
                "/_matrix/client/v3/createRoom",
                Body::Json(&spec.body()),
                Auth::AppService,
            )
            .await?;
        answer["room_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| SynapseError::unreadable("createRoom returned no room_id"))
    }

    /// The room's current state, as the bot sees it (one read).
    pub async fn room_state(&self, room_id: &str) -> Result<RoomView> {
        let path = format!("/_matrix/client/v3/rooms/{}/state", encode(room_id));
        let answer = self
            .call(Endpoint::RoomState, &path, Body::Empty, Auth::AppService)
            .await?;
        let events = answer
            .as_array()
            .ok_or_else(|| SynapseError::unreadable("the room state is not a list"))?;
        Ok(RoomView::from_state(events))
    }

    /// Sets the room's name (empty: none).
    pub async fn set_room_name(&self, room_id: &str, name: &str) -> Result<()> {
        self.put_state(room_id, "m.room.name", &json!({"name": name}))
            .await
    }

    /// Sets the room's topic (empty: none).
    pub async fn set_room_topic(&self, room_id: &str, topic: &str) -> Result<()> {
        self.put_state(room_id, "m.room.topic", &json!({"topic": topic}))
            .await
    }

    /// Points the room's avatar at `mxc` (empty: none).
    pub async fn set_room_avatar(&self, room_id: &str, mxc: &str) -> Result<()> {
        self.put_state(room_id, "m.room.avatar", &json!({"url": mxc}))
            .await
    }

    pub async fn set_join_rule(&self, room_id: &str, rule: JoinRule) -> Result<()> {
        let content = json!({"join_rule": rule.as_str()});
        self.put_state(room_id, "m.room.join_rules", &content).await
    }

    /// Replaces the `users` of the room's power levels, keeping the rest
    /// of the content as `view` shows it.
    pub async fn set_power_users(
        &self,
        room_id: &str,
        view: &RoomView,
        users: &PowerUsers,
    ) -> Result<()> {
        let mut content = view.power_levels.clone();
        if !content.is_object() {
            content = json!({});
        }
        content["users"] = Value::Object(users.0.clone());
        self.put_state(room_id, "m.room.power_levels", &content)
            .await
    }

    /// Sends a state event (with an empty state key: all the service sets).
    async fn put_state(&self, room_id: &str, event_type: &str, content: &Value) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{}/",
            encode(room_id),
            encode(event_type),
        );
        // Power levels are counted apart: a pass reports its role changes.
        let endpoint = if event_type == "m.room.power_levels" {
            Endpoint::PowerLevelsPut
        } else {
            Endpoint::StatePut
        };
        self.call(endpoint, &path, Body::Json(content), Auth::AppService)
            .await
            .map(drop)
    }

    /// Joins a local user to the room (the admin join API, as the bot: it
    /// invites first in rooms that are not public). Already joined counts
    /// as done: a join whose answer was lost (a timeout under load) may
    /// have gone through, and then the invite step is refused with `403`.
    pub async fn join_user(&self, room_id: &str, user_id: &str) -> Result<()> {
        let path = format!("/_synapse/admin/v1/join/{}", encode(room_id));
        match self
            .call(
                Endpoint::AdminJoin,
                &path,
                Body::Json(&json!({"user_id": user_id})),
                Auth::AppService,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e @ SynapseError::Refused { status: 403, .. }) => {
                match self.membership(room_id, user_id).await?.as_deref() {
                    Some("join") => Ok(()),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The user's membership of the room (`join`, `invite`, `leave`, …).
    pub async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<String>> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            encode(room_id),
            encode(user_id)
        );
        match self
            .call(Endpoint::MemberGet, &path, Body::Empty, Auth::AppService)
            .await
        {
            Ok(content) => Ok(content["membership"].as_str().map(str::to_string)),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a member (the bot kicks; there is no admin API for it).
    /// Gone already counts as done (the `403` of a kick that came too late).
    pub async fn kick(&self, room_id: &str, user_id: &str, reason: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/kick", encode(room_id));
        match self
            .call(
                Endpoint::Kick,
                &path,
                Body::Json(&json!({"user_id": user_id, "reason": reason})),
                Auth::AppService,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e @ SynapseError::Refused { status: 403, .. }) => {
                match self.membership(room_id, user_id).await?.as_deref() {
                    Some("join" | "invite") => Err(e),
                    _ => Ok(()),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Frees an alias (gone already counts as done).
    pub async fn delete_alias(&self, alias: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/directory/room/{}", encode(alias));
        match self
            .call(Endpoint::AliasDelete, &path, Body::Empty, Auth::AppService)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Points the alias at the room again (a deleted City Room created
    /// anew); an alias already pointing there counts as done.
    pub async fn put_alias(&self, alias: &str, room_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/directory/room/{}", encode(alias));
        let body = json!({"room_id": room_id});
        match self
            .call(
                Endpoint::AliasPut,
                &path,
                Body::Json(&body),
                Auth::AppService,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.errcode() == Some("M_UNKNOWN") || e.errcode() == Some("M_ROOM_IN_USE") => {
                match self.lookup_alias(alias).await? {
                    Some(current) if current == room_id => Ok(()),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Lists the room in the server's room directory, or takes it out.
    pub async fn set_directory(&self, room_id: &str, public: bool) -> Result<()> {
        let path = format!("/_matrix/client/v3/directory/list/room/{}", encode(room_id));
        let visibility = if public { "public" } else { "private" };
        self.call(
            Endpoint::DirectoryPut,
            &path,
            Body::Json(&json!({"visibility": visibility})),
            Auth::AppService,
        )
        .await
        .map(drop)
    }
}
