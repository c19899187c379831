-- The generic two-way pipeline: inward events that fail for a transient reason are
-- retried with backoff and end 'dead' after a bounded number of attempts (never
-- parked silently); same-field conflicts are rows an operator can list and resolve.

ALTER TABLE inbox ADD COLUMN attempts bigint NOT NULL DEFAULT 0;
-- When a 'received' row may be tried again (NULL: now).
ALTER TABLE inbox ADD COLUMN next_attempt_at bigint;

CREATE TABLE conflicts (
    id             bigserial PRIMARY KEY,
    system         TEXT NOT NULL,
    entity         TEXT NOT NULL,
    record_id      TEXT NOT NULL,
    field          TEXT NOT NULL,
    -- JSON values of both sides when the conflict was seen.
    hub_value      TEXT NOT NULL,
    external_value TEXT NOT NULL,
    -- external_wins, hub_wins, newest_wins or manual.
    policy         TEXT NOT NULL,
    -- 'hub' or 'external'; NULL while a manual conflict is open.
    winner         TEXT,
    -- 'open' (manual, waiting for an operator) or 'resolved'.
    status         TEXT NOT NULL,
    -- How an operator resolved it: 'hub', 'external' or 'value'.
    resolution     TEXT,
    inbox_id       bigint,
    created_at     bigint NOT NULL,
    resolved_at    bigint
);
CREATE INDEX conflicts_record ON conflicts (entity, record_id);
CREATE INDEX conflicts_status ON conflicts (status, system);
-- One open conflict per field and system: a later edit updates it.
CREATE UNIQUE INDEX conflicts_open ON conflicts (system, entity, record_id, field) WHERE status = 'open';
