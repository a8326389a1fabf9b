-- Issue 22 (CONTRACT.md section 13): conversations with agents.
--
-- What agents do in a place (a City Room or a direct chat) is one ordered
-- outbox into Matrix: messages (streamed in parts, edited, deleted, with an
-- attachment), reactions, typing and read receipts. Each row is a subject
-- whose wanted state the place's `send` job brings Matrix to. The place is
-- a key, `room:<room_id>` or `conversation:<conversation_id>`, which is also
-- the name of its stream back to DAARION.city and its `send` job's subject.
ALTER TABLE agent_messages ADD COLUMN place TEXT;
UPDATE agent_messages SET place = 'room:' || room_id;
UPDATE jobs SET subject = 'room:' || subject WHERE kind = 'send';
-- message, reaction, typing, read
ALTER TABLE agent_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
-- A thread's root (a message_id or a Matrix event id).
ALTER TABLE agent_messages ADD COLUMN thread_of TEXT;
-- A reaction's target; a read receipt's event.
ALTER TABLE agent_messages ADD COLUMN target TEXT;
-- 0 while a streamed answer is still coming.
ALTER TABLE agent_messages ADD COLUMN final BIGINT NOT NULL DEFAULT 1;
-- The created_at of the part or edit that set the body (the newest wins).
ALTER TABLE agent_messages ADD COLUMN body_at BIGINT NOT NULL DEFAULT 0;
-- What Matrix shows (NULL until sent): a difference is an edit to send.
ALTER TABLE agent_messages ADD COLUMN shown_body TEXT;
ALTER TABLE agent_messages ADD COLUMN shown_format TEXT;
ALTER TABLE agent_messages ADD COLUMN edits BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agent_messages ADD COLUMN edited_at BIGINT;
-- DAARION.city deleted it (a reaction: removed it); redacted once done.
ALTER TABLE agent_messages ADD COLUMN deleted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agent_messages ADD COLUMN delete_reason TEXT;
ALTER TABLE agent_messages ADD COLUMN redacted BIGINT NOT NULL DEFAULT 0;
-- Typing: how long it lasts.
ALTER TABLE agent_messages ADD COLUMN timeout_ms BIGINT;
-- {"url", "mimetype", "name", "size"} as DAARION.city sent it, and the
-- Matrix content once uploaded ({"url": mxc, "info": {…}, "msgtype"}).
ALTER TABLE agent_messages ADD COLUMN attachment TEXT;
ALTER TABLE agent_messages ADD COLUMN attachment_content TEXT;
UPDATE agent_messages SET body_at = created_at, shown_body = body, shown_format = format
    WHERE state = 'sent';
CREATE INDEX agent_messages_place ON agent_messages (place, state, created_at);

-- An agent takes direct chats only when DAARION.city says so.
ALTER TABLE agents ADD COLUMN accepts_direct_chats BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN accepts_direct_chats_at BIGINT NOT NULL DEFAULT 0;

-- Direct chats: a person invited an agent's puppet into a Matrix room.
CREATE TABLE conversations (
    conversation_id TEXT PRIMARY KEY,
    matrix_room_id  TEXT NOT NULL,
    agent_id        TEXT NOT NULL,
    -- Who invited: the Matrix id, and the DAARION user id if a person's.
    person_mxid     TEXT NOT NULL,
    -- invited, joined, refused, ended, closed (the puppet left)
    state           TEXT NOT NULL,
    reason          TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX conversations_room ON conversations (matrix_room_id);

-- What people did in Matrix that DAARION.city was told of (messages and
-- reactions): an edit, a redaction or a reaction names one of these.
CREATE TABLE matrix_events (
    event_id TEXT PRIMARY KEY,
    place    TEXT NOT NULL,
    sender   TEXT NOT NULL,
    -- message, reaction
    kind     TEXT NOT NULL,
    -- A reaction's target (as told) and key.
    target   TEXT,
    reaction_key TEXT,
    created_at BIGINT NOT NULL
);

-- Files uploaded for agents, by content: each once.
CREATE TABLE media_uploads (
    sha256 TEXT PRIMARY KEY,
    mxc    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
