-- A person's localpart is settled by the worker just before their account
-- is first created, from the best name known then (issue 10): until then
-- it is NULL. UNIQUE still holds among the settled ones.
ALTER TABLE people ALTER COLUMN localpart DROP NOT NULL;
