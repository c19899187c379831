-- Inward events (webhooks, polls): one row per (system, event id), so a retried or
-- twice-seen event is recorded once. `outcome` is 'received' until the event is
-- settled ('applied', 'echo', 'stale', 'ignored', 'rejected', 'failed'); a
-- 'received' row whose lease ran out is picked up again (crash between ack and apply).

CREATE TABLE inbox (
    id            bigserial PRIMARY KEY,
    system        TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    entity        TEXT,
    external_id   TEXT,
    -- The external system's own event time (Stripe: whole seconds).
    event_created bigint NOT NULL,
    -- 'webhook', 'poll' or 'backfill': who saw it first.
    source        TEXT NOT NULL,
    payload       TEXT NOT NULL,
    outcome       TEXT NOT NULL DEFAULT 'received',
    record_id     TEXT,
    remarks       TEXT,
    lease_until   bigint,
    received_at   bigint NOT NULL,
    settled_at    bigint,
    UNIQUE (system, event_id)
);
CREATE INDEX inbox_object ON inbox (system, external_id, event_created);
CREATE INDEX inbox_outcome ON inbox (system, outcome);
