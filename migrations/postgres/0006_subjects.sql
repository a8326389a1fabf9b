-- The queue and the event log become general (issue 12): a job is keyed by
-- the kind of subject it works on and the subject's key (a person's
-- user_id, a City Room's room_id, …), and carries its own attempts and last
-- error; event ids are unique per source (DAARION Auth, DAARION.city).
ALTER TABLE jobs DROP CONSTRAINT jobs_user_id_fkey;
ALTER TABLE jobs DROP CONSTRAINT jobs_pkey;
ALTER TABLE jobs RENAME COLUMN user_id TO subject;
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'person';
ALTER TABLE jobs ALTER COLUMN kind DROP DEFAULT;
ALTER TABLE jobs ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN last_error TEXT;
ALTER TABLE jobs ADD PRIMARY KEY (kind, subject);
UPDATE jobs j SET attempts = p.attempts, last_error = p.last_error
FROM people p WHERE p.user_id = j.subject;

-- Attempts and errors now live on the job (none once it is done).
ALTER TABLE people DROP COLUMN attempts;
ALTER TABLE people DROP COLUMN last_error;

ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events RENAME COLUMN user_id TO subject;
ALTER TABLE events ADD COLUMN source TEXT NOT NULL DEFAULT 'auth';
ALTER TABLE events ALTER COLUMN source DROP DEFAULT;
ALTER TABLE events ADD PRIMARY KEY (source, id);
