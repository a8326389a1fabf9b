-- City Rooms (issue 12, CONTRACT.md section 8). What DAARION.city wants
-- (the *_at columns hold the created_at, in ms, of the event that set the
-- field: last writer wins) and what has been applied to Synapse.
CREATE TABLE rooms (
    room_id            TEXT PRIMARY KEY,
    slug               TEXT,
    slug_at            BIGINT NOT NULL DEFAULT 0,
    name               TEXT,
    name_at            BIGINT NOT NULL DEFAULT 0,
    topic              TEXT,
    topic_at           BIGINT NOT NULL DEFAULT 0,
    avatar_url         TEXT,
    avatar_url_at      BIGINT NOT NULL DEFAULT 0,
    visibility         TEXT,
    visibility_at      BIGINT NOT NULL DEFAULT 0,
    deleted            BIGINT NOT NULL DEFAULT 0,
    lifecycle_at       BIGINT NOT NULL DEFAULT 0,
    -- pending, ready, closed, failed
    state              TEXT NOT NULL DEFAULT 'pending',
    -- The alias localpart, written down before the room is created: it is
    -- the key that makes creation happen once (looked up after a crash).
    alias              TEXT UNIQUE,
    matrix_room_id     TEXT,
    -- The avatar as uploaded: DAARION's URL it came from, its mxc and hash.
    applied_avatar_url TEXT,
    avatar_mxc         TEXT,
    avatar_sha256      TEXT,
    avatar_error       TEXT,
    -- The directory listing last set ('public' / 'private').
    applied_directory  TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

-- Every membership DAARION.city has told us of, removed ones included
-- (present = 0): they say whom to remove and order later events.
CREATE TABLE room_members (
    room_id   TEXT NOT NULL,
    member_id TEXT NOT NULL,
    role      TEXT NOT NULL,
    present   BIGINT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (room_id, member_id)
);
CREATE INDEX room_members_member ON room_members (member_id);

INSERT INTO sync_state (name) VALUES ('rooms');
