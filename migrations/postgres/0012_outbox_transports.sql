-- An event for DAARION.city may leave by HTTP (CITY_EVENTS_URL) and by
-- NATS JetStream (NATS_OUT, CONTRACT.md section 12). Each transport that
-- took it is marked, so that a retry after one of them took it sends it
-- only to the other; the row goes once every transport configured took it.
ALTER TABLE city_outbox ADD COLUMN http_done BIGINT NOT NULL DEFAULT 0;
ALTER TABLE city_outbox ADD COLUMN nats_done BIGINT NOT NULL DEFAULT 0;
