-- Agents (issue 13, CONTRACT.md section 9): DAARION.city's AI agents as
-- application-service puppets, their messages into City Rooms, and what
-- people say there (and their presence) on its way back to DAARION.city.

-- What DAARION.city wants of an agent (each field with the created_at, in
-- ms, of the event that set it: last writer wins) and what was applied.
CREATE TABLE agents (
    agent_id           TEXT PRIMARY KEY,
    slug               TEXT,
    slug_at            BIGINT NOT NULL DEFAULT 0,
    display_name       TEXT,
    display_name_at    BIGINT NOT NULL DEFAULT 0,
    avatar_url         TEXT,
    avatar_url_at      BIGINT NOT NULL DEFAULT 0,
    deleted            BIGINT NOT NULL DEFAULT 0,
    lifecycle_at       BIGINT NOT NULL DEFAULT 0,
    -- online, unavailable, offline (NULL: never said)
    presence           TEXT,
    status_msg         TEXT,
    presence_at        BIGINT NOT NULL DEFAULT 0,
    -- pending, ready, deactivated, failed
    state              TEXT NOT NULL DEFAULT 'pending',
    -- The puppet's localpart, settled once from the first slug (a Matrix id
    -- never changes), and whether Synapse has the account.
    localpart          TEXT UNIQUE,
    registered         BIGINT NOT NULL DEFAULT 0,
    applied_avatar_url TEXT,
    avatar_mxc         TEXT,
    avatar_sha256      TEXT,
    avatar_error       TEXT,
    -- The presence last set in Synapse.
    applied_presence   TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX agents_online ON agents (presence);

-- Agents' messages on their way into Matrix: the outbox of each City Room,
-- sent in created_at order, and the message id → event id record that
-- makes each one exactly one Matrix event.
CREATE TABLE agent_messages (
    message_id   TEXT PRIMARY KEY,
    room_id      TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    body         TEXT NOT NULL,
    format       TEXT NOT NULL,
    reply_to     TEXT,
    created_at   BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    -- pending, sent, failed
    state        TEXT NOT NULL DEFAULT 'pending',
    -- When a send was first tried: such a message may be in Matrix already
    -- (the answer was lost), so the room is read before it is sent again.
    attempted_at BIGINT,
    event_id     TEXT,
    last_error   TEXT,
    sent_at      BIGINT
);
CREATE INDEX agent_messages_outbox ON agent_messages (room_id, state, created_at);
CREATE INDEX agent_messages_event ON agent_messages (event_id);

-- What goes back to DAARION.city (CITY_EVENTS_URL), in order per stream (a
-- City Room's room_id, or 'presence'): the envelope as it is sent, kept
-- until DAARION.city answers 2xx.
CREATE TABLE city_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT NOT NULL,
    id          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX city_outbox_stream ON city_outbox (stream, seq);

-- Matrix rooms are looked up by id for every transaction from Synapse.
CREATE INDEX rooms_matrix_room_id ON rooms (matrix_room_id);

-- A person's Matrix presence as last told to DAARION.city (changes only).
ALTER TABLE people ADD COLUMN matrix_presence TEXT;

INSERT INTO sync_state (name) VALUES ('presence');
