//! One City Room's reconcile step: make its Matrix room what DAARION.city
//! wants, sending only what differs from the room's current state (read
//! once per run).
//!
//! - Created once: the alias is written down before `createRoom`, and a
//!   room that already answers to it (we crashed after Synapse created it,
//!   or another replica did) is adopted instead of creating a second one.
//! - Name, topic, avatar (fetched like people's: SSRF-safe, reused by
//!   content hash), join rule and directory listing follow the City Room.
//! - Members with an active account are joined, removed members kicked,
//!   and in private rooms everyone who is not a member; roles become one
//!   power-levels write. Members without an account yet are joined when
//!   they get one (the person's job queues their rooms).
//! - A deleted room is closed: members removed, alias freed, invite-only,
//!   out of the directory; its history stays.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::stream::{self, StreamExt};

use super::avatar::follow;
use super::outcome::Outcome;
use crate::avatar::AvatarFetcher;
use crate::clock::Clock;
use crate::domain::city::{Role, Visibility};
use crate::store::{AppliedAvatar, JobKind, MemberAccount, Room, RoomState, Store};
use crate::synapse::{Homeserver, JoinRule, Refusal, RoomSpec, RoomView, Synapse, SynapseError};

/// Alias candidates tried before giving up (`-2` … `-50`).
const MAX_ALIASES: u32 = 50;
/// `applied_directory` of a closed room (out of the directory, alias freed).
const CLOSED: &str = "closed";
/// Matrix ids (and so aliases) are at most 255 bytes.
const MAX_ALIAS_BYTES: usize = 255;

pub struct RoomDeps<'a> {
    pub store: &'a Store,
    pub synapse: &'a Synapse,
    pub avatars: &'a AvatarFetcher,
    pub alias_prefix: &'a str,
    /// Joins sent at once for one room.
    pub join_concurrency: usize,
    pub clock: &'a Clock,
}

pub async fn reconcile(deps: &RoomDeps<'_>, room: Room) -> Outcome<RoomState> {
    let mut step = Step { deps, r: room };
    match step.run().await {
        Ok(state) => Outcome::Done(state),
        Err(outcome) => outcome,
    }
}

struct Step<'a> {
    deps: &'a RoomDeps<'a>,
    r: Room,
}

type StepResult<T> = Result<T, Outcome<RoomState>>;

impl Step<'_> {
    async fn run(&mut self) -> StepResult<RoomState> {
        let synapse = self.deps.synapse;
        let room_id = match self.r.matrix_room_id.clone() {
            Some(id) => id,
            // Deleted before it ever reached Matrix: nothing to close.
            None if self.r.wanted.deleted => return Ok(RoomState::Closed),
            // Known only from membership events so far: created when
            // `room.created` (or a listing) brings its slug.
            None if self.r.wanted.slug.is_none() => return Ok(RoomState::Pending),
            None => self.create().await?,
        };
        let view = synapse.room_state(&room_id).await?;
        if self.r.wanted.deleted {
            self.close(&room_id, &view).await?;
            return Ok(RoomState::Closed);
        }
        if self.r.applied_directory.as_deref() == Some(CLOSED) {
            // Deleted, then created anew: it gets its alias back.
            if let Some(alias) = &self.r.alias {
                synapse.put_alias(&synapse.alias(alias), &room_id).await?;
            }
        }
        self.sync_details(&room_id, &view).await?;
        self.sync_members(&room_id, &view).await?;
        Ok(RoomState::Ready)
    }

    /// Creates the Matrix room once; returns its id.
    async fn create(&mut self) -> StepResult<String> {
        let synapse = self.deps.synapse;
        let alias_lp = self.settle_alias().await?;
        let spec = RoomSpec {
            alias_localpart: alias_lp,
            public: self.visibility() == Visibility::Public,
            name: self.r.wanted.name.clone(),
            topic: self.r.wanted.topic.clone(),
        };
        let room_id = find_or_create(synapse, &self.r.room_id, &spec).await?;
        self.adopt(room_id).await
    }

    async fn adopt(&mut self, matrix_room_id: String) -> StepResult<String> {
        self.deps
            .store
            .set_matrix_room_id(&self.r.room_id, &matrix_room_id, self.deps.clock.now_ms())
            .await?;
        self.r.matrix_room_id = Some(matrix_room_id.clone());
        Ok(matrix_room_id)
    }

    /// The alias localpart, written down before the room is created.
    async fn settle_alias(&mut self) -> StepResult<String> {
        if let Some(alias) = &self.r.alias {
            return Ok(alias.clone());
        }
        let slug = self.r.wanted.slug.as_deref().unwrap_or(&self.r.room_id);
        let base = format!("{}{}", self.deps.alias_prefix, alias_safe(slug));
        let server_len = self.deps.synapse.alias("").len();
        for n in 1..=MAX_ALIASES {
            let suffix = if n == 1 {
                String::new()
            } else {
                format!("-{n}")
            };
            let budget = MAX_ALIAS_BYTES.saturating_sub(server_len + suffix.len());
            let candidate = format!("{}{suffix}", truncate(&base, budget));
            if self
                .deps
                .store
                .settle_room_alias(&self.r.room_id, &candidate, self.deps.clock.now_ms())
                .await?
            {
                // Another replica may have settled first: theirs counts.
                let settled = self
                    .deps
                    .store
                    .room(&self.r.room_id)
                    .await?
                    .and_then(|r| r.alias)
                    .unwrap_or(candidate);
                self.r.alias = Some(settled.clone());
                return Ok(settled);
            }
        }
        Err(Outcome::Failed(format!(
            "no free alias for slug {slug:?} among {MAX_ALIASES} candidates"
        )))
    }

    fn visibility(&self) -> Visibility {
        self.r.wanted.visibility.unwrap_or(Visibility::Private)
    }

    /// Name, topic, avatar, join rule and directory listing.
    async fn sync_details(&mut self, room_id: &str, view: &RoomView) -> StepResult<()> {
        let synapse = self.deps.synapse;
        let w = self.r.wanted.clone();
        if view.name != w.name {
            let name = w.name.clone().unwrap_or_default();
            synapse.set_room_name(room_id, &name).await?;
        }
        if view.topic != w.topic {
            let topic = w.topic.clone().unwrap_or_default();
            synapse.set_room_topic(room_id, &topic).await?;
        }
        self.sync_avatar(room_id, view).await?;
        let public = self.visibility() == Visibility::Public;
        let rule = if public {
            JoinRule::Public
        } else {
            JoinRule::Invite
        };
        if view.join_rule.as_deref() != Some(rule.as_str()) {
            synapse.set_join_rule(room_id, rule).await?;
        }
        let directory = self.visibility().as_str();
        if self.r.applied_directory.as_deref() != Some(directory) {
            synapse.set_directory(room_id, public).await.map_err(|e| {
                if e.is_refused() && public {
                    Outcome::Failed(format!(
                        "{e} (Synapse's room_list_publication_rules must allow {})",
                        synapse.bot_user_id()
                    ))
                } else {
                    e.into()
                }
            })?;
            self.deps
                .store
                .set_room_directory(&self.r.room_id, directory)
                .await?;
        }
        Ok(())
    }

    async fn sync_avatar(&mut self, room_id: &str, view: &RoomView) -> StepResult<()> {
        let current = AppliedAvatar {
            url: self.r.applied_avatar_url.clone(),
            mxc: self.r.avatar_mxc.clone(),
            sha256: self.r.avatar_sha256.clone(),
            error: self.r.avatar_error.clone(),
        };
        let deps = (self.deps.avatars, self.deps.synapse, self.deps.store);
        let wanted = self.r.wanted.avatar_url.clone();
        let applied = follow(deps, JobKind::Room, &self.r.room_id, wanted, current).await?;
        self.r.applied_avatar_url = applied.url;
        self.r.avatar_mxc = applied.mxc;
        self.r.avatar_sha256 = applied.sha256;
        self.r.avatar_error = applied.error;
        self.show_avatar(room_id, view).await
    }

    /// Points the room's avatar at our image (or none), if it does not.
    async fn show_avatar(&self, room_id: &str, view: &RoomView) -> StepResult<()> {
        if view.avatar != self.r.avatar_mxc {
            let url = self.r.avatar_mxc.clone().unwrap_or_default();
            self.deps.synapse.set_room_avatar(room_id, &url).await?;
        }
        Ok(())
    }

    /// Joins, removals and power levels: only what differs from `view`.
    async fn sync_members(&mut self, room_id: &str, view: &RoomView) -> StepResult<()> {
        let synapse = self.deps.synapse;
        let store = self.deps.store;
        let bot = synapse.bot_user_id();
        let members = store.room_members(&self.r.room_id).await?;
        let accounts: HashMap<String, String> = store
            .member_accounts(&self.r.room_id)
            .await?
            .into_iter()
            .map(
                |MemberAccount {
                     member_id,
                     localpart,
                 }| (member_id, synapse.user_id(&localpart)),
            )
            .collect();
        // Matrix id → wanted role, for members with an account; and every
        // Matrix id the room's memberships ever named (managed users).
        let mut wanted: BTreeMap<String, Role> = BTreeMap::new();
        let mut managed: HashSet<String> = HashSet::new();
        for m in &members {
            if let Some(user) = accounts.get(&m.member_id) {
                managed.insert(user.clone());
                if m.present {
                    wanted.insert(user.clone(), m.role);
                }
            }
        }
        // Joins go out side by side (Synapse's admin join is one request
        // per member; a room of a thousand is otherwise a thousand round
        // trips in a row); the client's limit still caps them.
        let joins: Vec<String> = wanted
            .keys()
            .filter(|u| !view.is_joined(u))
            .cloned()
            .collect();
        let results: Vec<Result<(), SynapseError>> = stream::iter(joins)
            .map(|user| async move { synapse.join_user(room_id, &user).await })
            .buffer_unordered(self.deps.join_concurrency.max(1))
            .collect()
            .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e.into());
        }
        let private = self.visibility() == Visibility::Private;
        let unwanted: Vec<String> = view
            .in_room()
            .filter(|u| *u != bot && !wanted.contains_key(*u))
            .filter(|u| private || managed.contains(*u))
            .map(str::to_string)
            .collect();
        for user in &unwanted {
            synapse
                .kick(room_id, user, "not a member of this City Room")
                .await?;
        }
        self.sync_power(room_id, view, &bot, &wanted, &managed)
            .await
    }

    /// One power-levels write when managed users' levels differ; levels
    /// of users the service does not manage are left alone.
    async fn sync_power(
        &self,
        room_id: &str,
        view: &RoomView,
        bot: &str,
        wanted: &BTreeMap<String, Role>,
        managed: &HashSet<String>,
    ) -> StepResult<()> {
        let current = view.power_users();
        let mut users = current.clone();
        for user in managed {
            users.remove(user);
        }
        for (user, role) in wanted {
            if role.power() != 0 {
                users.set(user, role.power());
            }
        }
        if view.creators_unlimited() {
            users.remove(bot);
        } else {
            users.set(bot, 100);
        }
        if users != current {
            self.deps
                .synapse
                .set_power_users(room_id, view, &users)
                .await?;
        }
        Ok(())
    }

    /// A deleted City Room: members out, alias freed, invite-only, out of
    /// the directory; history kept.
    async fn close(&mut self, room_id: &str, view: &RoomView) -> StepResult<()> {
        let synapse = self.deps.synapse;
        let bot = synapse.bot_user_id();
        for user in view.in_room().filter(|u| *u != bot) {
            synapse
                .kick(room_id, user, "this City Room was deleted")
                .await?;
        }
        if let Some(alias) = &self.r.alias {
            let alias = synapse.alias(alias);
            if synapse.lookup_alias(&alias).await?.as_deref() == Some(room_id) {
                synapse.delete_alias(&alias).await?;
            }
        }
        if view.join_rule.as_deref() != Some(JoinRule::Invite.as_str()) {
            synapse.set_join_rule(room_id, JoinRule::Invite).await?;
        }
        if self.r.applied_directory.as_deref() != Some(CLOSED) {
            synapse.set_directory(room_id, false).await?;
            self.deps
                .store
                .set_room_directory(&self.r.room_id, CLOSED)
                .await?;
        }
        Ok(())
    }
}

/// The Matrix room of City Room `city_room` answering to `spec`'s alias:
/// the one that already does (we crashed after Synapse created it, or
/// another replica did), else a new one.
async fn find_or_create(
    hs: &impl Homeserver,
    city_room: &str,
    spec: &RoomSpec,
) -> StepResult<String> {
    let alias = hs.alias(&spec.alias_localpart);
    if let Some(existing) = hs.lookup_alias(&alias).await? {
        return Ok(existing);
    }
    match hs.create_room(spec).await {
        // The directory listing is set apart (see `sync_details`):
        // Synapse creates the room unlisted, without a word, when its
        // `room_list_publication_rules` do not allow the bot.
        Ok(room_id) => {
            tracing::info!(room_id = %city_room, matrix_room_id = %room_id, "created the Matrix room");
            Ok(room_id)
        }
        // Someone (we, before a crash; another replica) created it since.
        Err(e) if e.refusal() == Some(Refusal::InUse) => match hs.lookup_alias(&alias).await? {
            Some(existing) => Ok(existing),
            None => Err(Outcome::retry("the alias is taken but points nowhere yet")),
        },
        Err(e) => Err(e.into()),
    }
}

/// A slug as alias characters: lower case ASCII letters, digits, `.`, `_`,
/// `-`; anything else becomes `-`.
fn alias_safe(slug: &str) -> String {
    let cleaned: String = slug
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "room".into()
    } else {
        trimmed.to_string()
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (the prefix is
/// checked at start-up and slugs pass `alias_safe`, but a cut inside a
/// character would panic the worker).
fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What the fake's `createRoom` does.
    enum OnCreate {
        /// Creates the room, unless the alias points somewhere already.
        Create,
        /// Another replica took the alias just before: it then points at
        /// `winner` (None: not yet).
        LoseRace { winner: Option<String> },
        /// Synapse cannot be reached.
        Down,
    }

    /// A homeserver of aliases in memory, recording the rooms it creates.
    struct FakeHomeserver {
        aliases: Mutex<HashMap<String, String>>,
        on_create: OnCreate,
        created: Mutex<Vec<RoomSpec>>,
    }

    impl FakeHomeserver {
        fn new(on_create: OnCreate, aliases: &[(&str, &str)]) -> Self {
            let aliases = aliases
                .iter()
                .map(|(a, r)| (a.to_string(), r.to_string()))
                .collect();
            FakeHomeserver {
                aliases: Mutex::new(aliases),
                on_create,
                created: Mutex::new(Vec::new()),
            }
        }

        fn created(&self) -> usize {
            self.created.lock().unwrap().len()
        }
    }

    impl Homeserver for FakeHomeserver {
        fn alias(&self, localpart: &str) -> String {
            format!("#{localpart}:test")
        }

        async fn lookup_alias(&self, alias: &str) -> Result<Option<String>, SynapseError> {
            Ok(self.aliases.lock().unwrap().get(alias).cloned())
        }

        async fn create_room(&self, spec: &RoomSpec) -> Result<String, SynapseError> {
            let alias = self.alias(&spec.alias_localpart);
            let taken = || SynapseError::refused_as(Refusal::InUse, "Room alias already taken");
            match &self.on_create {
                OnCreate::Create => {
                    let mut aliases = self.aliases.lock().unwrap();
                    if aliases.contains_key(&alias) {
                        return Err(taken());
                    }
                    let room_id = format!("!new{}:test", self.created());
                    aliases.insert(alias, room_id.clone());
                    self.created.lock().unwrap().push(spec.clone());
                    Ok(room_id)
                }
                OnCreate::LoseRace { winner } => {
                    if let Some(winner) = winner {
                        self.aliases.lock().unwrap().insert(alias, winner.clone());
                    }
                    Err(taken())
                }
                OnCreate::Down => Err(SynapseError::Unavailable {
                    reason: "cannot connect".into(),
                    retry_after: None,
                    rate_limited: false,
                }),
            }
        }
    }

    fn spec() -> RoomSpec {
        RoomSpec {
            alias_localpart: "city-kyiv".into(),
            public: true,
            name: Some("Kyiv".into()),
            topic: None,
        }
    }

    async fn outcome(hs: &FakeHomeserver) -> StepResult<String> {
        find_or_create(hs, "kyiv", &spec()).await
    }

    #[tokio::test]
    async fn a_free_alias_gets_a_new_room() {
        let hs = FakeHomeserver::new(OnCreate::Create, &[]);
        assert_eq!(outcome(&hs).await, Ok("!new0:test".into()));
        assert_eq!(*hs.created.lock().unwrap(), vec![spec()]);
    }

    #[tokio::test]
    async fn a_room_behind_the_alias_is_adopted_not_created_again() {
        // We crashed after Synapse created it, before writing its id down.
        let hs = FakeHomeserver::new(OnCreate::Create, &[("#city-kyiv:test", "!old:test")]);
        assert_eq!(outcome(&hs).await, Ok("!old:test".into()));
        assert_eq!(hs.created(), 0);
    }

    #[tokio::test]
    async fn an_alias_taken_meanwhile_is_adopted() {
        let winner = Some("!theirs:test".to_string());
        let hs = FakeHomeserver::new(OnCreate::LoseRace { winner }, &[]);
        assert_eq!(outcome(&hs).await, Ok("!theirs:test".into()));
    }

    #[tokio::test]
    async fn an_alias_taken_but_pointing_nowhere_is_retried() {
        let hs = FakeHomeserver::new(OnCreate::LoseRace { winner: None }, &[]);
        assert!(matches!(outcome(&hs).await, Err(Outcome::Retry { .. })));
        assert_eq!(hs.created(), 0);
    }

    #[tokio::test]
    async fn synapse_down_is_retried() {
        let hs = FakeHomeserver::new(OnCreate::Down, &[]);
        assert!(matches!(outcome(&hs).await, Err(Outcome::Retry { .. })));
    }

    #[test]
    fn slugs_become_alias_characters() {
        assert_eq!(alias_safe("kyiv-center"), "kyiv-center");
        assert_eq!(alias_safe("Kyiv Center!"), "kyiv-center");
        assert_eq!(alias_safe("Київ"), "room");
        assert_eq!(alias_safe("a/b:c"), "a-b-c");
    }

    #[test]
    fn truncation_cuts_between_characters() {
        assert_eq!(truncate("city-kyiv", 4), "city");
        assert_eq!(truncate("city", 40), "city");
        assert_eq!(truncate("київ", 3), "к");
        assert_eq!(truncate("київ", 1), "");
    }
}
